"""Jobs: the model, its state machine, the HTTP API, the service that moves jobs and the tasks."""
