from tortoise import migrations
from tortoise.migrations import operations as ops

# The per-model backlog on /metrics (mediagen.observability.router): pending jobs by model, then
# creation time. Partial, so it holds only the jobs waiting for their first start, and a scrape
# reads the models, each one's oldest job and (up to a bound) its count from it alone.
PENDING_BY_MODEL = [
    "CREATE INDEX IF NOT EXISTS jobs_pending_model_idx ON jobs (model, created_at) "
    "WHERE status = 'pending'",
]


class Migration(migrations.Migration):
    dependencies = [("jobs", "0017_queue_deadline")]

    initial = False

    operations = [
        ops.RunSQL(PENDING_BY_MODEL, reverse_sql="DROP INDEX IF EXISTS jobs_pending_model_idx"),
    ]
