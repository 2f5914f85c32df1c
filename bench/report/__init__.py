"""Reports from records: terminal table, Markdown, HTML, plots, gate verdict, writers; imports choose and below."""
