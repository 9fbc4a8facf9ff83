"""The reports stage: each case's pathology report as plain text, from GDC PDFs or a user's table, cached per case."""
