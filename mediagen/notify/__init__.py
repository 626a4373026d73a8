"""Client webhooks: signed POSTs to the URL a client gave with its job (see README)."""
