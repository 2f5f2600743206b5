"""The jobs: simplify (chain and graph) and slice, each plan -> run -> assemble."""
