"""Run inside distilabel's own throwaway venv (see peer_distilabel.py): the same 1-token A/B
judgements through distilabel 1.5.3's TextGeneration + OpenAILLM, batch size = concurrency."""

import json
import sys
import time

from distilabel.models.llms import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [{"instruction": f"Question number {i}: A or B?"} for i in range(n)]
start = time.perf_counter()
with Pipeline(name="peer-bench") as pipeline:
    load = LoadDataFromDicts(data=rows, batch_size=concurrency)
    judge = TextGeneration(
        llm=OpenAILLM(
            model="bench",
            base_url=url,
            api_key="not-needed",
            generation_kwargs={
                "max_new_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": 20,
            },
        ),
        input_batch_size=concurrency,
    )
    load >> judge
distiset = pipeline.run(use_cache=False)
elapsed = time.perf_counter() - start
done = len(distiset["default"]["train"])
print(json.dumps({"rows": done, "seconds": elapsed, "rate": done / elapsed}))
