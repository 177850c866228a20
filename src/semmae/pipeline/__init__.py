"""The whole SemMAE pipeline in one call, its report, and the masking study."""
