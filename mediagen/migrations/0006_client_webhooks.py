from tortoise import migrations
from tortoise.migrations import operations as ops
from mediagen.notify.models import DeliveryStatus
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('jobs', '0005_job_progress')]

    initial = False

    operations = [
        ops.CreateModel(
            name='JobWebhook',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('job', fields.OneToOneField('jobs.Job', source_field='job_id', db_constraint=True, to_field='id', related_name='webhook', on_delete=OnDelete.CASCADE)),
                ('url', fields.CharField(max_length=2000)),
                ('events', fields.JSONField(default=list, encoder=JSON_DUMPS, decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'job_webhooks', 'app': 'jobs', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='WebhookDelivery',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('job', fields.ForeignKeyField('jobs.Job', source_field='job_id', db_constraint=True, to_field='id', related_name='webhook_deliveries', on_delete=OnDelete.CASCADE)),
                ('event', fields.CharField(max_length=16)),
                ('url', fields.CharField(max_length=2000)),
                ('payload', fields.JSONField(encoder=JSON_DUMPS, decoder=loads)),
                ('status', fields.CharEnumField(default=DeliveryStatus.PENDING, description='PENDING: pending\nDELIVERED: delivered\nFAILED: failed', enum_type=DeliveryStatus, max_length=16)),
                ('attempts', fields.IntField(default=0)),
                ('last_status_code', fields.IntField(null=True)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('next_attempt_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('delivered_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'webhook_deliveries', 'app': 'jobs', 'indexes': [Index(fields=['job_id', 'created_at'], name='webhook_deliveries_job_idx')], 'pk_attr': 'id', 'table_description': 'One event for one job; its id is the `webhook-id` of every attempt (`msg_` + hex).'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='ApiKey',
            name='webhook_secret',
            field=fields.CharField(null=True, max_length=100),
        ),
    ]
