"""Voice activity detection: Silero with the reports the STTs need."""
