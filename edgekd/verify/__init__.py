"""The verdicts: whether the student met the latency budget (measured or estimated, with its
interval) and the accuracy budget (a paired bound on the test split), and the CI gate that
compares a run with an accepted baseline. They read records; they train and time nothing."""
