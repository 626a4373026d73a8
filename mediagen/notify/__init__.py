"""Client webhooks: signed POSTs to the URL a client gave with its job (see README)."""

DELIVER_TASK = "mediagen.notify.deliver"  # one delivery attempt (mediagen.notify.tasks)
