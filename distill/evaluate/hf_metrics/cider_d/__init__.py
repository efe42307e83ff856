"""Package marker, so the metric module ships in the wheel."""
