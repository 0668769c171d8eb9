"""The web dashboard, served by the gateway under `/`."""
