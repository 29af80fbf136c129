"""Automation: the sensor that keeps the source partitions in step with the sources file."""
