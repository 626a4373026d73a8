from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("jobs", "0018_model_signals")]

    initial = False

    operations = [
        ops.AddField(
            model_name="ApiKey",
            name="weight",
            field=fields.IntField(default=1, db_default=1),
        ),
        ops.CreateModel(
            name="ModelPause",
            fields=[
                (
                    "model",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=200),
                ),
                ("paused_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "model_pauses", "app": "jobs", "pk_attr": "model"},
            bases=["Model"],
        ),
    ]
