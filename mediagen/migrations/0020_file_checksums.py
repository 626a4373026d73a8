"""Input files keep the SHA-256 and MD5 of their bytes and the metadata their uploader gave
(Replicate"s files API). Files stored before have none: their checksums read as empty."""

from orjson import loads
from tortoise import fields, migrations
from tortoise.fields.data import JSON_DUMPS
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("jobs", "0019_fair_turns")]

    initial = False

    operations = [
        ops.AddField(
            model_name="InputFile",
            name="md5",
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name="InputFile",
            name="metadata",
            field=fields.JSONField(null=True, encoder=JSON_DUMPS, decoder=loads),
        ),
        ops.AddField(
            model_name="InputFile",
            name="sha256",
            field=fields.CharField(null=True, max_length=64),
        ),
    ]
