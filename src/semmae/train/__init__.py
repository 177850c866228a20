"""Trainers on top of the one loop (:mod:`semmae.engine.loop`): pretraining, part learning, fine-tuning."""
