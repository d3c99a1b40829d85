"""Who may write to whom: practices, practitioners, patients, their contacts and care relationships, and
the CSV import of a practice migrating off plain email."""
