"""Reports from run records: what they say (content), laid out as Markdown and HTML with plots, the gate's verdict,
and the writers that put report.md, report.html and summary.csv beside the records (write)."""
