"""Reading the cluster: response correlation, the slot table and backlog views."""
