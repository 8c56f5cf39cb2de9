"""rerankq's producer SDK: clients (sync, async), job handles, the result cache, ``rank_many`` and
waiting for results. Light: never imports torch. Its public names are ``rerankq``'s own
(``from rerankq import RerankClient``); the modules here are internal."""
