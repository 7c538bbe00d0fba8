"""Reference peer for aihost-bench: a small Python implementation of the seed's design.

THIS IS A BENCHMARK BASELINE, NOT PRODUCTION CODE. It exists so the benchmark suite can drive
the design aihost replaces (a FastAPI service with an in-memory asyncio queue, one consumer task
and one reused WebSocket to ComfyUI) against the same fake ComfyUI in the same run, and report
the ratio rather than only absolute figures. It keeps nothing durable: tasks live in a dict and
are lost when the process stops.

Routes:
- POST /api/tasks/create: `{"workflow_name", "params": {"input_data": {"wf_json": {...}}}}`,
  `{"workflow": "name", "inputs": {...}}` (templates from --workflows: NAME.json plus the
  parameter map in NAME.toml), or `{"workflow": {graph}}` / `{"prompt": {graph}}` (a raw API
  graph). Answers 202 with the task (`task_id`, `status`).
- GET /api/tasks/{task_id}: the task (PENDING, PROCESSING, COMPLETED or FAILED), 404 if unknown.
- GET /api/health: `{"status": "ok"}`.

The consumer follows ComfyUI's protocol: POST /prompt with the socket's client_id (and a prompt
id chosen here, so the waiter exists before the prompt can finish), wait on the WebSocket for
`executing` with `node: null` for that prompt id, read /history/{id}, GET /view each output and
store it in --outputs.

Run: python reference_peer.py --port 8000 --comfyui http://127.0.0.1:8188 --workflows DIR
     --outputs DIR [--accept-only]
(--accept-only starts no consumer: submits are only queued, for the submit benchmark.)
"""

import argparse
import asyncio
import contextlib
import json
import os
import time
import tomllib
import uuid

import aiohttp
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ARGS = None
TASKS: dict = {}
QUEUE: asyncio.Queue = None  # created on start-up, on uvicorn's loop
WAITERS: dict = {}  # prompt_id -> Future resolved with None (success) or an error message
TEMPLATES: dict = {}



@contextlib.asynccontextmanager
async def lifespan(_app):
    """Creates the queue on uvicorn's loop and starts the socket reader and the one consumer."""
    global QUEUE
    QUEUE = asyncio.Queue()
    background = []
    if not ARGS.accept_only:
        comfy = Comfy(ARGS.comfyui)
        await comfy.connect()
        background = [
            asyncio.create_task(comfy.read_socket()),
            asyncio.create_task(consumer(comfy)),
        ]
    yield
    for job in background:
        job.cancel()


app = FastAPI(lifespan=lifespan)


def now() -> float:
    return time.time()


def load_template(name: str):
    if name in TEMPLATES:
        return TEMPLATES[name]
    base = os.path.join(ARGS.workflows, name)
    if "/" in name or ".." in name or not os.path.isfile(base + ".json"):
        return None
    with open(base + ".json", encoding="utf-8") as f:
        graph = json.load(f)
    params = {}
    if os.path.isfile(base + ".toml"):
        with open(base + ".toml", "rb") as f:
            params = tomllib.load(f).get("params", {})
    TEMPLATES[name] = (graph, params)
    return TEMPLATES[name]


def build_graph(body: dict):
    """Answers (graph, None) or (None, error message)."""
    if isinstance(body.get("prompt"), dict):
        return body["prompt"], None
    if isinstance(body.get("workflow"), dict):
        return body["workflow"], None
    if "workflow_name" in body:
        name = body["workflow_name"]
        values = ((body.get("params") or {}).get("input_data") or {}).get("wf_json") or {}
    elif isinstance(body.get("workflow"), str):
        name = body["workflow"]
        values = body.get("inputs") or {}
    else:
        return None, "give workflow_name (with params.input_data.wf_json) or workflow"
    template = load_template(str(name))
    if template is None:
        return None, f"unknown workflow {name!r}"
    graph, params = template
    graph = json.loads(json.dumps(graph))
    for key, value in values.items():
        spec = params.get(key)
        if spec is None:
            return None, f"unknown parameter {key!r}"
        graph[spec["node"]]["inputs"][spec["input"]] = value
    return graph, None


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@app.get("/api/health")
async def health():
    return {"status": "ok"}


@app.post("/api/tasks/create")
async def create(request: Request):
    try:
        body = await request.json()
    except Exception:
        return error(400, "bad_json", "the body is not JSON")
    if not isinstance(body, dict):
        return error(400, "bad_body", "the body must be a JSON object")
    graph, problem = build_graph(body)
    if problem:
        return error(422, "bad_workflow", problem)
    task_id = str(uuid.uuid4())
    task = {
        "task_id": task_id,
        "type": "comfyui.workflow",
        "status": "PENDING",
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
        "result": None,
        "error": None,
    }
    TASKS[task_id] = task
    await QUEUE.put((task_id, graph))
    return JSONResponse(task, status_code=202)


@app.get("/api/tasks/{task_id}")
async def get_task(task_id: str):
    task = TASKS.get(task_id)
    if task is None:
        return error(404, "task_not_found", "no such task")
    return task


class Comfy:
    """One HTTP session (keep-alive) and one WebSocket to ComfyUI, reused for every task."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = str(uuid.uuid4())
        self.session = None
        self.ws = None

    async def connect(self):
        if self.session is None:
            self.session = aiohttp.ClientSession()
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        while True:
            try:
                self.ws = await self.session.ws_connect(ws_url, max_msg_size=0)
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.5)

    async def read_socket(self):
        """Resolves waiters from the socket's messages; reconnects when the socket drops."""
        while True:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews and text frames: not needed here
                message = json.loads(msg.data)
                kind = message.get("type")
                data = message.get("data") or {}
                waiter = WAITERS.get(data.get("prompt_id"))
                if waiter is None or waiter.done():
                    continue
                if kind == "executing" and data.get("node") is None:
                    waiter.set_result(None)
                elif kind in ("execution_error", "execution_interrupted"):
                    waiter.set_result(data.get("exception_message") or kind)
            for waiter in WAITERS.values():
                if not waiter.done():
                    waiter.set_result("the ComfyUI socket closed")
            await self.connect()

    async def run(self, graph: dict, out_dir: str):
        prompt_id = str(uuid.uuid4())
        waiter = asyncio.get_running_loop().create_future()
        WAITERS[prompt_id] = waiter
        try:
            body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
            async with self.session.post(self.url + "/prompt", json=body) as r:
                answer = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"ComfyUI refused the prompt: {answer}")
            problem = await waiter
            if problem:
                raise RuntimeError(problem)
        finally:
            WAITERS.pop(prompt_id, None)
        async with self.session.get(f"{self.url}/history/{prompt_id}") as r:
            history = (await r.json()).get(prompt_id) or {}
        if (history.get("status") or {}).get("status_str") != "success":
            raise RuntimeError("ComfyUI reported an error")
        files = []
        os.makedirs(out_dir, exist_ok=True)
        for node in (history.get("outputs") or {}).values():
            for image in node.get("images") or []:
                query = {
                    "filename": image["filename"],
                    "subfolder": image.get("subfolder", ""),
                    "type": image.get("type", "output"),
                }
                async with self.session.get(self.url + "/view", params=query) as r:
                    data = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"/view answered {r.status}")
                path = os.path.join(out_dir, os.path.basename(image["filename"]))
                with open(path, "wb") as f:
                    f.write(data)
                files.append(path)
        return files


async def consumer(comfy: Comfy):
    while True:
        task_id, graph = await QUEUE.get()
        task = TASKS[task_id]
        task["status"] = "PROCESSING"
        task["started_at"] = now()
        try:
            files = await comfy.run(graph, os.path.join(ARGS.outputs, task_id))
            task["result"] = {"files": files}
            task["status"] = "COMPLETED"
        except Exception as e:  # a baseline: every failure fails the task
            task["error"] = str(e)
            task["status"] = "FAILED"
        task["finished_at"] = now()
        QUEUE.task_done()




def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--comfyui", default="http://127.0.0.1:8188")
    parser.add_argument("--workflows", default="workflows")
    parser.add_argument("--outputs", default="peer-outputs")
    parser.add_argument("--accept-only", action="store_true")
    ARGS = parser.parse_args()
    uvicorn.run(app, host=ARGS.host, port=ARGS.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
