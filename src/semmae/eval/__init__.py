"""Evaluation of encoders: frozen features, weighted kNN, linear probe (fine-tuning: :mod:`semmae.train.finetune`)."""
