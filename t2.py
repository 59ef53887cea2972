import asyncio, nats
from nats.js.api import StreamConfig
async def main():
    nc = await nats.connect("nats://127.0.0.1:14334")
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="A", subjects=["a.>"], deny_delete=True, deny_purge=True))
    await js.publish("a.1", b"x")
    try: await js.delete_msg("A", 1); print("deleted!")
    except Exception as e: print("delete refused:", e)
    try:
        await js.update_stream(StreamConfig(name="A", subjects=["a.>"], deny_delete=False, deny_purge=False)); print("update ok")
        await js.delete_msg("A", 1); print("deleted after update")
    except Exception as e: print("update refused:", e)
asyncio.run(main())
