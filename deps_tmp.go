package sluice

import (
	_ "github.com/alibaba/sentinel-golang/api"
	_ "github.com/coder/websocket"
	_ "github.com/gin-gonic/gin"
	_ "github.com/google/uuid"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/image/draw"
	_ "golang.org/x/image/webp"
)
