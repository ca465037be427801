"""Switches moto's signature checks on and makes the one IAM user the tests sign as.

moto checks nothing until POST /moto-api/reset-auth with a count N: after N more unauthenticated
requests, every request must carry a valid SigV4 signature of a known access key (S3-KMS digest
§5). The N requests create the user, give it an allow-all policy and make its access key.
Prints "AKID SECRET" on stdout.
"""
import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"3", method="POST",
                             headers={"Content-Type": "text/plain"})
urllib.request.urlopen(req, timeout=10).read()
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="hsmbackup-test")
iam.put_user_policy(UserName="hsmbackup-test", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="hsmbackup-test")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
