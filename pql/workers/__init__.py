"""PQL's machinery: the actor, the V- and P-learners, the evaluator, how they are built from a config,
the ratio controller that balances them and the exchange that carries parameters and transitions between them."""
