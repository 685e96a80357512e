"""Locust users for turbo-serve: each posts text-to-image requests back to back (OpenAI's API, a random seed).

ImageClient counts anything but an image as a failure. OverloadClient, for a server pushed past its queue, also
accepts 503 when it carries Retry-After, and waits a tenth of a second before trying again.

With TURBO_LOCUST_TIMES set, every response's status and time in milliseconds are also appended to that file,
unrounded (locust's own percentiles keep two significant digits: 100 ms steps at one second).
"""

import os
import random
import time

from locust import HttpUser, constant, events, task

PROMPT = "a photograph of an astronaut riding a horse"


class ImageClient(HttpUser):
    wait_time = constant(0)

    @task
    def generate(self) -> None:
        body = {"prompt": PROMPT, "seed": random.randrange(2**32), "response_format": "b64_json"}
        with self.client.post("/v1/images/generations", json=body, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")


class OverloadClient(HttpUser):
    wait_time = constant(0)

    @task
    def generate(self) -> None:
        body = {"prompt": PROMPT, "seed": random.randrange(2**32), "response_format": "b64_json"}
        with self.client.post("/v1/images/generations", json=body, catch_response=True) as response:
            if response.status_code == 503 and response.headers.get("Retry-After"):
                response.success()
                time.sleep(0.1)
            elif response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")


@events.request.add_listener
def record(request_type, name, response_time, response_length, response=None, exception=None, **kwargs) -> None:
    path = os.environ.get("TURBO_LOCUST_TIMES")
    if path:
        status = "error" if response is None or not response.status_code else response.status_code
        with open(path, "a") as f:
            f.write(f"{status} {response_time}\n")
