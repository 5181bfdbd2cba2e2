"""The benchmarks. Each tool runs from the repository root as a module:

    python -m bench.bench         multi-turn chat: first token per turn, decode, load, memory, HTTP
    python -m bench.concurrency   several users at once through the app
    python -m bench.decode        decode and first token against llama.cpp, per configuration
    python -m bench.decode_profile FOLDER   where a decode step's time goes
    python -m bench.lookup        prompt lookup against plain decoding and llama.cpp's
    python -m bench.quality       answer quality of export and runtime choices
    python -m bench.stop          how soon Stop, a closed reader and a Stop in the queue end an answer
    python -m bench.idle          what an app nobody uses costs in CPU, and a short call through the queue
    python -m bench.readme        copies the results into README.md

What was measured and what it showed: bench/NOTES.md; every figure: bench/results/.

The benchmarks import three helpers from tests/, so that they start and ask the app exactly
as the tests do: tests/app_process.py (the app as a child process, and its `/chat` and `/v1`
clients), tests/json_cases.py (the JSON questions and schemas) and tests/phi3_tokenizer.py
(Phi-3's tokenizer, rebuilt offline). Only that way round: no test imports bench/ except
those marked `bench`, which tests/test_structure.py checks.
"""
