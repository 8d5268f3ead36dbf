"""The example datasets ``studio-flows demo`` runs (installed as ``studio_flows.examples``)."""
