# A WebSocket web function: the websockets server on 0.0.0.0:9000 echoes each message.
import asyncio
import os

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:
        await websocket.send(f"{os.getpid()}:{message}")


async def main():
    async with serve(echo, "0.0.0.0", 9000) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
