"""Export: the format table and one writer per format. Verification against eager lives in `workflow`."""
