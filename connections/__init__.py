"""Projects and the registry connections they own."""
