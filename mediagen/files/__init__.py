"""Input files: uploaded (or fetched) media that a job's parameters name as `mediagen://files/<id>`."""
