"""``python -m pql.bench``."""

from pql.bench.run import main

if __name__ == "__main__":
    main()
