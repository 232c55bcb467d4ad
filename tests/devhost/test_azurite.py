"""Azurite starts on free ports with a random key and serves queues and blobs."""

from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueClient


async def test_queue_and_blob_round_trip(azurite):
    async with QueueClient.from_connection_string(azurite.connection_string, "smoke") as queue:
        await queue.create_queue()
        await queue.send_message("hello")
        messages = [m async for m in queue.receive_messages()]
        assert [m.content for m in messages] == ["hello"]
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("smoke")
        await container.create_container()
        await container.upload_blob("b", b"data")
        assert await (await container.download_blob("b")).readall() == b"data"
    assert azurite.account_key not in repr(azurite)
