from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [('jobs', '0012_job_lifecycle')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Job',
            name='surface',
            field=fields.CharField(null=True, max_length=16),
        ),
        ops.AddField(
            model_name='Job',
            name='surface_base',
            field=fields.CharField(null=True, max_length=300),
        ),
    ]
