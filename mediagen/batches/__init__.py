"""Batches: many job requests accepted all or none, followed and canceled as one."""
