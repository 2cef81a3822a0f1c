"""The tables consumers read: every committed run appended to Delta Lake tables under `{output}/tables/`."""
