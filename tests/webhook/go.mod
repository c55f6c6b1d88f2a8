module hepto.test/webhook

go 1.24
