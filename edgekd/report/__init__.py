"""What a run tells its user: the HTML report beside report.json, and the command line's tables
and --json forms (80 columns, one line per verdict)."""
