"""The web page at `/`: a prompt form, live progress, a gallery and a detail view, written by
hand in plain HTML, CSS and JavaScript (no build step, nothing fetched from another site)."""
