from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('jobs', '0007_job_counters')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='WebhookDelivery',
            index=Index(fields=['status', 'next_attempt_at'], name='webhook_deliveries_due_idx'),
        ),
    ]
