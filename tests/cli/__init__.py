"""Tests of the semmae command line."""
