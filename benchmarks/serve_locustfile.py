"""Locust users for turbo-serve: each posts text-to-image requests back to back (OpenAI's API, a random seed)."""

import random

from locust import HttpUser, constant, task

PROMPT = "a photograph of an astronaut riding a horse"


class ImageClient(HttpUser):
    wait_time = constant(0)

    @task
    def generate(self) -> None:
        body = {"prompt": PROMPT, "seed": random.randrange(2**32), "response_format": "b64_json"}
        with self.client.post("/v1/images/generations", json=body, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
