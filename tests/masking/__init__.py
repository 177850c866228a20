"""Tests of semmae.masking."""
