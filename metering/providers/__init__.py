"""Provider accounts' admin APIs: importing their usage and cost reports (decision 0116)."""
