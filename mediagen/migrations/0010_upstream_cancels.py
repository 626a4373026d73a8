from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('jobs', '0009_signing_secret_and_restrict')]

    initial = False

    operations = [
        ops.CreateModel(
            name='UpstreamCancel',
            fields=[
                ('prediction_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=200)),
                ('job_id', fields.UUIDField()),
                ('attempts', fields.IntField(default=0)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('next_attempt_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'upstream_cancels', 'app': 'jobs', 'pk_attr': 'prediction_id', 'table_description': 'A prediction that must be stopped upstream.'},
            bases=['Model'],
        ),
    ]
