"""Locust users for turbo-serve: each posts text-to-image requests back to back (OpenAI's API, a random seed).

With TURBO_LOCUST_TIMES set, every response time is also appended to that file in milliseconds, unrounded
(locust's own percentiles keep two significant digits: 100 ms steps at one second).
"""

import os
import random

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


@events.request.add_listener
def record(request_type, name, response_time, response_length, exception=None, **kwargs) -> None:
    path = os.environ.get("TURBO_LOCUST_TIMES")
    if path and exception is None:
        with open(path, "a") as f:
            f.write(f"{response_time}\n")
