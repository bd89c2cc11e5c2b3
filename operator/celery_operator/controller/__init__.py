"""The reconciling core: one worker per CeleryApp that applies children, declares the broker
topology, polls queue depth, autoscales pools and writes every status."""
