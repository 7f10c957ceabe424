"""What ops see and put back (``txmail dlq``): the parked fallback requests and the
dead-lettered messages (``entries``), read and replayed without loss (``held``)."""
