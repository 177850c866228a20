"""Tests of semmae.models: encoder loading and export."""
