from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('jobs', '0008_delivery_due_index')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ServiceSecret',
            fields=[
                ('name', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('value', fields.CharField(max_length=256)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'service_secrets', 'app': 'jobs', 'pk_attr': 'name', 'table_description': 'A secret the deployment makes once and every process shares.'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='Job',
            name='api_key',
            field=fields.ForeignKeyField('jobs.ApiKey', source_field='api_key_id', null=True, db_constraint=True, to_field='id', related_name='jobs', on_delete=OnDelete.RESTRICT),
        ),
        # AlterField records the new rule; the constraint in the database is replaced here.
        ops.RunSQL(
            [
                "ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_api_key_id_fkey",
                "ALTER TABLE jobs ADD CONSTRAINT jobs_api_key_id_fkey FOREIGN KEY (api_key_id) "
                "REFERENCES api_keys (id) ON DELETE RESTRICT",
            ],
            reverse_sql=[
                "ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_api_key_id_fkey",
                "ALTER TABLE jobs ADD CONSTRAINT jobs_api_key_id_fkey FOREIGN KEY (api_key_id) "
                "REFERENCES api_keys (id) ON DELETE SET NULL",
            ],
        ),
    ]
